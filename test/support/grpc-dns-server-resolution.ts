/**
 * Imported first by a test that resolves names through a DNS server of its own (support/dns-server.ts). grpc-js asks
 * the DNS server named in a `dns://127.0.0.1:PORT/name:port` target only through its alternative resolver (c-ares),
 * which it turns on from the environment once, as it loads; otherwise it asks the system's resolver (getaddrinfo),
 * as for the `host:port` endpoints Weft's users give. Both hand every address of the name to the same channel.
 */
process.env.GRPC_NODE_USE_ALTERNATIVE_RESOLVER = 'true';
