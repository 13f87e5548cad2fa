"""The lab: a realistic cluster-traffic and attack simulator writing Hubble flows."""
