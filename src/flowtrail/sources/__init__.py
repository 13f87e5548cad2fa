"""Where flows come from: Hubble JSON files, exporter logs and stdin (Relay and eBPF later)."""
