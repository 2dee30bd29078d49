"""Diffusers LTX-2 / LTX-Video: the resident backend (backend) and the tiny random-weight models built in code (tiny)."""
