#!/usr/bin/env python3
"""Generates the small DICOM series of nnunet-data's DICOM tests and what SimpleITK reads.

Writes, under OUT (default crates/nnunet-data/tests/data/dicom):
  <name>/*.dcm     one folder per series (a case each), CT Image Storage, 16×12 px, 5–7 slices
  expected.json    for every readable series SimpleITK's ImageSeriesReader result (file order
                   from GetGDCMSeriesFileNames): shape (Z, Y, X), voxels as float32 in C order,
                   origin, spacing, direction (ITK order); for every refusal the folder and the
                   nnunet-data error variant it must give

Usage: python3 scripts/dicom/make_series.py [OUT]
Made with pydicom 3.0.2 and SimpleITK 2.5.7 (ITK 5.4). Deterministic (seeded), so rerunning
rewrites identical fixtures except for pydicom/SimpleITK version changes.
"""

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds
from pydicom.encaps import encapsulate

ROWS, COLS = 12, 16
ROOT = "1.2.826.0.1.3680043.10.1357"  # a fixed prefix, so UIDs are reproducible


def uid(*parts):
    return ROOT + "." + ".".join(str(p) for p in parts)


def ds(value):
    """A DS string of at most 16 characters."""
    return format_number_as_ds(float(value))


def rotation(ax, ay, az):
    """Rotation matrix from angles (degrees) about x, then y, then z."""
    ax, ay, az = (math.radians(a) for a in (ax, ay, az))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def write_series(folder, spec, rng):
    """Writes one series; `spec` holds the geometry and encoding, overrides per slice."""
    folder.mkdir(parents=True)
    row, col = np.asarray(spec["row"], float), np.asarray(spec["col"], float)
    normal = np.cross(row, col)
    step = np.asarray(spec["step"] if "step" in spec else normal * spec["gap"], float)
    n = spec["slices"]
    origin = np.asarray(spec["origin"], float)
    positions = [origin + k * step for k in range(n)]
    for k, p in spec.get("position_override", {}).items():
        positions[k] = np.asarray(p, float)
    order = list(range(n))
    if spec.get("shuffle"):
        rng.shuffle(order)
    signed = spec.get("signed", True)
    series = spec.get("series_uid", uid(spec["index"], 1))
    for file_index, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid(spec["index"], 2, k)
        syntax = spec.get("syntax", ExplicitVRLittleEndian)
        # RLE is made by compressing an uncompressed data set.
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if syntax == RLELossless else syntax
        meta.ImplementationClassUID = uid(0)
        d = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        d.SOPClassUID = CTImageStorage
        d.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        d.StudyInstanceUID = uid(spec["index"], 0)
        d.SeriesInstanceUID = spec.get("series_override", {}).get(k, series)
        d.FrameOfReferenceUID = uid(spec["index"], 3)
        d.Modality = "CT"
        d.PatientID = "phantom"
        d.InstanceNumber = k + 1
        d.ImagePositionPatient = [ds(v) for v in positions[k]]
        d.ImageOrientationPatient = [ds(v) for v in spec.get("orientation_override", {}).get(k, [*row, *col])]
        d.PixelSpacing = [ds(v) for v in spec["pixel_spacing"]]
        d.SliceThickness = ds(abs(spec.get("gap", 1.0)))
        d.SamplesPerPixel = 1
        d.PhotometricInterpretation = "MONOCHROME2"
        rows = spec.get("rows_override", {}).get(k, ROWS)
        d.Rows, d.Columns = rows, COLS
        d.BitsAllocated = 16
        d.BitsStored = spec.get("bits_stored", 16)
        d.HighBit = d.BitsStored - 1
        d.PixelRepresentation = 1 if signed else 0
        d.RescaleSlope = ds(spec["slope"])
        d.RescaleIntercept = ds(spec["intercept"])
        d.RescaleType = "HU"
        top = 2 ** (d.BitsStored - 1) if signed else 2**d.BitsStored
        low = -top if signed else 0
        # A ramp that differs per slice, row and column, plus noise over the full stored range.
        z, y, x = k, np.arange(rows)[:, None], np.arange(COLS)[None, :]
        pixels = (z * 1000 + y * 40 + x * 3 + rng.integers(-300, 300, (rows, COLS))) % (top - low) + low
        pixels = pixels.astype(np.int16 if signed else np.uint16)
        if spec.get("high_bits"):
            # Bits above BitsStored set in a checkerboard (as overlays once were stored):
            # readers must mask them off.
            pixels = pixels.view(np.uint16) | (((y + x) % 2) * 0xA000).astype(np.uint16)
            pixels = pixels.view(np.int16 if signed else np.uint16)
        for key in spec.get("drop", {}).get(k, []):
            delattr(d, key)
        if syntax == RLELossless:
            d.PixelData = pixels.tobytes()
            d.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
        elif syntax == JPEG2000Lossless:
            # Not real JPEG 2000: enough to be refused by transfer syntax before any decoding.
            d.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])
            d["PixelData"].VR = "OB"
        else:
            d.PixelData = pixels.tobytes()
        d.save_as(folder / f"IM{file_index:04d}.dcm", enforce_file_format=True)


def sitk_read(folder):
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    image = reader.Execute()
    voxels = sitk.GetArrayFromImage(image)
    return {
        "pixel_type": image.GetPixelIDTypeAsString(),
        "shape": list(voxels.shape),
        "origin": list(image.GetOrigin()),
        "spacing": list(image.GetSpacing()),
        "direction": list(image.GetDirection()),
        "files": [Path(n).name for n in names],
        # float32 values are exact in a JSON number (Python writes the shortest f64 repr).
        "voxels": [float(v) for v in voxels.astype(np.float32).ravel()],
    }


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "crates/nnunet-data/tests/data/dicom"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(20)
    axial = dict(row=[1, 0, 0], col=[0, 1, 0], origin=[-120.5, -98.25, -310.0], pixel_spacing=[0.7421875, 0.7421875])
    oblique = rotation(20, -10, 30)
    readable = {
        # Plain axial, ascending, slope 1 (SimpleITK keeps int16).
        "axial": dict(axial, slices=6, gap=2.5, slope=1, intercept=-1024),
        # File names in random order, slices descending along z in the scanner's numbering,
        # non-trivial rescale (float voxels).
        "axial_shuffled": dict(axial, slices=7, gap=-1.25, shuffle=True, slope=0.5, intercept=-1000.25,
                                pixel_spacing=[0.9765625, 0.7421875]),
        # Rows going right to left: the slice normal points to the feet.
        "axial_flipped": dict(axial, row=[-1, 0, 0], slices=5, gap=3.0, slope=1.5, intercept=-1024),
        "coronal": dict(row=[1, 0, 0], col=[0, 0, -1], origin=[-60.0, 20.0, 80.0], pixel_spacing=[0.8, 0.6],
                        slices=5, gap=1.5, shuffle=True, slope=1, intercept=-1024),
        "sagittal": dict(row=[0, 1, 0], col=[0, 0, -1], origin=[15.0, -40.0, 60.0], pixel_spacing=[1.25, 0.5],
                         slices=6, gap=-2.0, slope=2.5, intercept=-2048.5),
        "oblique": dict(row=list(oblique[:, 0]), col=list(oblique[:, 1]), origin=[-33.3, 12.7, -5.5],
                        pixel_spacing=[0.7421875, 1.1], slices=6, gap=2.5, shuffle=True, slope=0.25, intercept=-1024),
        # Unsigned 12-bit stored values, implicit VR little endian.
        "implicit_uint12": dict(axial, slices=5, gap=5.0, signed=False, bits_stored=12, syntax=ImplicitVRLittleEndian,
                                slope=1, intercept=-1024),
        # Compressed transfer syntaxes that dicom-rs decodes without C libraries.
        "rle": dict(axial, slices=5, gap=2.5, shuffle=True, syntax=RLELossless, slope=0.75, intercept=-1024),
        "deflate": dict(axial, slices=5, gap=1.0, syntax=DeflatedExplicitVRLittleEndian,
                        slope=1, intercept=-1000),
    }
    # Stored-value widths (written last, so that the series above keep their bytes).
    bit_depths = {
        # Signed 12-bit stored values (negative ones sign-extended in their 16 bits).
        "signed_int12": dict(axial, slices=4, gap=2.0, bits_stored=12, slope=1, intercept=0),
        # Unsigned 12-bit stored values with junk in the bits above them (SimpleITK masks it).
        "uint12_high_bits": dict(axial, slices=4, gap=2.0, signed=False, bits_stored=12, high_bits=True,
                                 slope=1, intercept=-1024),
    }
    refusals = {
        # Positions sheared along y by tan(15°) per mm along z.
        "refuse_gantry_tilt": (dict(axial, slices=5, step=[0, 2.5 * math.tan(math.radians(15)), 2.5],
                                    slope=1, intercept=-1024), "GantryTilt"),
        "refuse_mixed_series": (dict(axial, slices=5, gap=2.5, series_override={3: uid(99, 1)},
                                     slope=1, intercept=-1024), "MixedSeries"),
        "refuse_missing_position": (dict(axial, slices=5, gap=2.5, drop={2: ["ImagePositionPatient"]},
                                         slope=1, intercept=-1024), "MissingTag"),
        # A missing slice: gaps 2.5, 2.5, 5.0, 2.5.
        "refuse_nonuniform_gap": (dict(axial, slices=5, gap=2.5, position_override={3: [-120.5, -98.25, -300.0],
                                                                                   4: [-120.5, -98.25, -297.5]},
                                       slope=1, intercept=-1024), "NonUniformSpacing"),
        "refuse_inconsistent_orientation": (dict(axial, slices=5, gap=2.5,
                                                 orientation_override={1: [1, 0, 0, 0, 0.9961947, -0.0871557]},
                                                 slope=1, intercept=-1024), "InconsistentOrientation"),
        "refuse_inconsistent_size": (dict(axial, slices=5, gap=2.5, rows_override={4: 10}, slope=1, intercept=-1024),
                                     "InconsistentSlices"),
        "refuse_jpeg2000": (dict(axial, slices=5, gap=2.5, syntax=JPEG2000Lossless, slope=1, intercept=-1024),
                            "UnsupportedTransferSyntax"),
    }
    expected = {
        "source": "scripts/dicom/make_series.py, pydicom %s, SimpleITK %s" % (
            pydicom.__version__, sitk.Version.VersionString()),
        "geometry_tolerance": 1e-5,
        "series": [],
        "refusals": [],
    }
    for index, (name, spec) in enumerate(readable.items(), start=1):
        write_series(out / name, dict(spec, index=index), rng)
        expected["series"].append(dict(name=name, **sitk_read(out / name)))
    for index, (name, (spec, error)) in enumerate(refusals.items(), start=100):
        write_series(out / name, dict(spec, index=index), rng)
        expected["refusals"].append(dict(name=name, error=error))
    for index, (name, spec) in enumerate(bit_depths.items(), start=200):
        write_series(out / name, dict(spec, index=index), rng)
        expected["series"].append(dict(name=name, **sitk_read(out / name)))
    with open(out / "expected.json", "w") as f:
        json.dump(expected, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
