"""Model providers, the model gateway and the scripted model server."""
