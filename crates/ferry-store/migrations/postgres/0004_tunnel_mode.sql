-- What the node does with its tunnel (`fetch` or `cloud-init`), declared at enrollment:
-- a fetch-mode node phones home itself, so its default vendor-data has no phone_home.
ALTER TABLE tunnels ADD COLUMN mode TEXT;
