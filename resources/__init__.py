"""MiniGlot's bundled files, installed as the package `miniglot_resources`; engine/resources.py locates them."""
