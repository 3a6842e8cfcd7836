"""The proxy's plumbing: the HTTP/1.1 client, the upstream, header forwarding, inbound limits, routes."""
