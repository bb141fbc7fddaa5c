"""Physics-based dual-energy DRRs from a CT (`dexrt synth`). Needs the `synth` extra (nibabel, pydicom, xraydb,
spekpy, scipy); `import dexrt` does not import this package."""
