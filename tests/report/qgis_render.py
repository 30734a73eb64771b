"""Render a raster with QGIS (PyQGIS, system Python) to a PNG; print its renderer as JSON.

Run as ``/usr/bin/python3 qgis_render.py RASTER PNG`` with ``QT_QPA_PLATFORM=offscreen``. The layer
is opened the way QGIS opens a file, so a ``.qml`` beside the raster is applied as its default style.
"""

import json
import os
import sys

from qgis.core import QgsApplication, QgsMapRendererSequentialJob, QgsMapSettings, QgsRasterLayer
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor

app = QgsApplication([], False)
app.initQgis()
layer = QgsRasterLayer(sys.argv[1], "mask")
if not layer.isValid():
    sys.exit(f"invalid layer {sys.argv[1]}")
settings = QgsMapSettings()
settings.setLayers([layer])
settings.setExtent(layer.extent())
side = int(sys.argv[3]) if len(sys.argv) > 3 else 300
settings.setOutputSize(QSize(side, side))
settings.setBackgroundColor(QColor(255, 255, 255))
job = QgsMapRendererSequentialJob(settings)
job.start()
job.waitForFinished()
job.renderedImage().save(sys.argv[2], "PNG")
renderer = layer.renderer()
classes = [{"value": c.value, "label": c.label, "color": c.color.name()} for c in renderer.classes()] \
    if renderer.type() == "paletted" else []
print(json.dumps({"renderer": renderer.type(), "classes": classes}), flush=True)
# QGIS can crash while tearing down its application object at interpreter exit; the work is done by now
os._exit(0)
