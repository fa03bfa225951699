"""Demo MCP servers shipped with tracetune: `shop` (a small deterministic shop) and
`site_fetch` (the demo website on loopback, read through the real `mcp-server-fetch`)."""
