"""Data in and out: image sources (folders, CSV manifests, idx files, built-in sets), the
decoding and bad-file policy, validation carve-outs, and the HDF5 code store."""
