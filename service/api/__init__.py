"""Read and admin controllers, response schemas, and the HTTP error vocabulary."""
