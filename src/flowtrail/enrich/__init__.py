"""Enrichment the detections need: IP classes, DNS name features, threat intelligence."""
