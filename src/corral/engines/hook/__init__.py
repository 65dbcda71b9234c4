"""The permission hook an external engine runs inside its sandbox (``permission.py``; stdlib only).

This directory is mounted read-only into the sandbox of every external engine: it holds nothing else.
"""
