"""Where flows and alerts go: hubble-style printers now; alert and SIEM sinks later."""
