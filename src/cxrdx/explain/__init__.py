"""Layer 4: Grad-CAM heatmaps, overlays and the one localisation scorer. Never imports cxrdx.inference."""
