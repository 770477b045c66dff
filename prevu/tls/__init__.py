"""
HTTPS for prevu: SNI certificate selection, certificates you bring, and ACME.

Shaped like txacme (a challenge responder interface, a certificate store, an
issuing service driven by a clock), built on certbot's maintained `acme`
library, whose blocking calls run on prevu's own thread pool. See docs/acme.md
for why, and docs/tls.md for how to run it.

    certs       crypto helpers: keys, PEM bundles, self-signed and TLS-ALPN-01 certificates
    contexts    one pyOpenSSL context per certificate, chosen by SNI; ALPN (http/1.1, acme-tls/1)
    handshake   holds a ClientHello a bounded time while that name's certificate is being issued
    http        interceptors for the plain-HTTP proxy: HTTP-01 answers and the redirect to HTTPS
    store       certificates and the account key on disk (mode 0600)
    dns         DNS-01 providers: an exec hook and RFC 2136 dynamic updates
    acme        the blocking ACME v2 client (certbot's `acme.ClientV2`), run in threads
    responders  the challenge responders (HTTP-01, TLS-ALPN-01, DNS-01)
    issuer      the issuing service: orders, renewals, retries, rate cap, on-demand waiting
    files       `[tls] mode = "files"`: a certificate and key you bring, reloaded on change
    status      certificate state for the API and Prometheus lines for the metrics
    service     `build_tls`: wires the above for `build_service`
"""
