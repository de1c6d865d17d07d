"""Close CRM domain layer: HTTP client, upsert engine and simulator (no Beam here)."""
