"""Self-configuring 3D anatomical landmark detection: the package the bundle configs import."""
