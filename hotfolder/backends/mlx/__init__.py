"""MLX audio-video (mlx-video-with-audio): backend and its thread, pipeline maths, weights, upstream patches, tiny models."""
