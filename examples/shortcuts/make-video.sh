# The body of the Shortcut's "Run Shell Script" action (Shell: zsh, Pass Input: to stdin).
# Set these two paths to yours: `hotfolder agent install` prints them.
HOTFOLDER_PYTHON="${HOTFOLDER_PYTHON:-$HOME/hotfolder/.venv/bin/python}"
HOTFOLDER_ROOT="${HOTFOLDER_ROOT:-$HOME/Movies/Hotfolder}"

# The prompt arrives on stdin and goes straight to submit: it is never part of a command line.
# --wait shows progress on stderr and prints the finished .mp4's path as the last line of stdout;
# a failed job exits 1 with the error on stderr, which Shortcuts shows.
video=$("$HOTFOLDER_PYTHON" -m hotfolder submit - --wait --root "$HOTFOLDER_ROOT") || exit $?
printf '%s\n' "$video" | tail -n 1
