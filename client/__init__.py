"""The ClientApp: local data, local training, replies with the update and its metrics."""
