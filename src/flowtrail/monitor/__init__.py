"""The live monitor (`flowtrail run`): configuration, bounded queue, pipeline, logs."""
