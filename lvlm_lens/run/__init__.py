"""The command line and the main job: ``lvlm-lens attribute`` end to end, resumable and sharded.

The top layer: may import every other subpackage; nothing imports it.
"""
