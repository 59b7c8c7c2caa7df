"""The shared kernel: database, blobs, events and jobs. It knows nothing of any care domain."""
