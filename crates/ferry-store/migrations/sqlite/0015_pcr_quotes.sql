-- The PCR values of each node's latest TPM quote that verified cryptographically (its
-- registered EK activated the credential for this AK; the quote's signature and nonce
-- binding good), kept even when the PCR policy refused the boot: what `ferry node tpm
-- learn` shows and, once an admin approves, pins as the policy. Never written from a
-- quote that did not verify. `pcrs` is {"INDEX": "HEX"} of the SHA-256 bank; `policy` the
-- node's merged PCR policy when it quoted (a quote older than a policy change is not
-- learned); reset/restart counts say which boot of the TPM it was.
CREATE TABLE node_pcr_quotes (
    node           TEXT PRIMARY KEY REFERENCES nodes(name) ON DELETE CASCADE,
    ek_fingerprint TEXT NOT NULL,
    bank           TEXT NOT NULL,
    pcrs           TEXT NOT NULL,
    policy         TEXT NOT NULL,
    reset_count    BIGINT NOT NULL,
    restart_count  BIGINT NOT NULL,
    client         TEXT NOT NULL,
    recorded_at    BIGINT NOT NULL
);
