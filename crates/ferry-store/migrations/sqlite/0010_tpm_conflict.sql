-- Another TPM that proved itself for a node (credential activated, quote good, every
-- other factor of the node's policy passed) while a different EK was held for it: it is
-- refused, never replaces the held one, and is kept here so the admin sees both
-- fingerprints (`ferry node tpm`) before approving anything. Cleared by approval or
-- registration.
ALTER TABLE node_tpm ADD COLUMN conflict_fingerprint TEXT;
ALTER TABLE node_tpm ADD COLUMN conflict_at BIGINT;
