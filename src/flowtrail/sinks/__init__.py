"""Where flows and alerts go: hubble-style printers, alert sinks (file, stdout, webhook, Alertmanager,
syslog) with retries and a spool, and flow exporters for SIEMs (Hubble exporter files,
Elasticsearch/OpenSearch, Splunk HEC)."""
