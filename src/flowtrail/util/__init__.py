"""Small process-level helpers shared by the commands."""
