"""backends/diffusers"""
