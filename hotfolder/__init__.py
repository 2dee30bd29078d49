"""hotfolder: drop a prompt file into a folder, get a video with sound."""

__version__ = "0.1.0"
