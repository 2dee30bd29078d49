"""backends/mlx"""
