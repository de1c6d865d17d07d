"""The Close domain: requests, the HTTP client, event mapping, the upsert engine, reverse ETL; no Beam here (docs/DESIGN.md "Floor plan")."""
