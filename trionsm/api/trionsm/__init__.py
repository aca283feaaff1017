"""trionsm's own services (package ``trionsm.*`` in proto/), generated with the NSM model."""
