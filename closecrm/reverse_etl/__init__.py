"""Warehouse tables to Close and Close to files: snapshot diff, warehouse sources and URLs, export."""
