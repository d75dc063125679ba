#!/bin/sh
# Add MiniGlot to this user's application menu, running the executable next to this script.
# Undo: rm ~/.local/share/applications/miniglot.desktop ~/.local/share/icons/hicolor/*/apps/miniglot.*
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
data="${XDG_DATA_HOME:-$HOME/.local/share}"
mkdir -p "$data/applications" "$data/icons/hicolor/scalable/apps" "$data/icons/hicolor/256x256/apps"
cp "$here/miniglot.svg" "$data/icons/hicolor/scalable/apps/miniglot.svg"
cp "$here/miniglot.png" "$data/icons/hicolor/256x256/apps/miniglot.png"
exec_path=$(printf '%s' "$here/MiniGlot" | sed 's/[\\"`$]/\\\\&/g; s/[|&]/\\&/g')  # desktop-entry quoting, then sed's
sed "s|^Exec=.*|Exec=\"$exec_path\"|" "$here/miniglot.desktop" > "$data/applications/miniglot.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database "$data/applications" 2>/dev/null || true
echo "MiniGlot is in the application menu ($data/applications/miniglot.desktop -> $here/MiniGlot)"
