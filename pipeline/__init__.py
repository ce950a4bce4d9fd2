"""The froster library: video, manifests, views, models, heads, losses, store, text, protocols, metrics.

Nothing here parses arguments, prints, exits or configures logging handlers.
"""
