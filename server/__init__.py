"""The ServerApp: run config -> strategy -> rounds -> run directory."""
