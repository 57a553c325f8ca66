"""Visual encoders: the frames sampled from a clip (``features.frames_per_clip``) to one vector per utterance."""

from __future__ import annotations

import functools
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import mediapipe
import numpy as np
import torch
import transformers
from mediapipe.python.solutions import face_detection, face_mesh, face_mesh_connections
from pydantic import Field

from spikemo.features.base import (
    EncodedBatch,
    Encoder,
    EncoderParams,
    FeatureFailure,
    model_files,
    per_item,
    register_encoder,
)
from spikemo.features.hf import PretrainedModelFolder
from spikemo.features.native_logs import native_stderr_filtered


class VisualEncoder(Encoder):
    modality = "visual"

    def decoding(self) -> dict[str, Any]:
        return {"frames_per_clip": self.runtime.frames_per_clip}


def _landmark_indices(*connection_sets: frozenset[tuple[int, int]]) -> np.ndarray:
    return np.array(sorted({index for connections in connection_sets for pair in connections for index in pair}))


LEFT_EYE = _landmark_indices(face_mesh_connections.FACEMESH_LEFT_EYE)
RIGHT_EYE = _landmark_indices(face_mesh_connections.FACEMESH_RIGHT_EYE)
EXPRESSION_LANDMARKS = _landmark_indices(
    face_mesh_connections.FACEMESH_LIPS,
    face_mesh_connections.FACEMESH_LEFT_EYE,
    face_mesh_connections.FACEMESH_RIGHT_EYE,
    face_mesh_connections.FACEMESH_LEFT_EYEBROW,
    face_mesh_connections.FACEMESH_RIGHT_EYEBROW,
)
MEDIAPIPE_DIR = Path(mediapipe.__file__).parent
BLANK_FRAME = np.zeros((64, 64, 3), dtype=np.uint8)
FACEMESH_MODEL_FILES = (
    "modules/face_detection/face_detection_short_range.tflite",
    "modules/face_landmark/face_landmark.tflite",
)


class FaceMeshParams(EncoderParams):
    min_detection_confidence: float = Field(0.5, gt=0, lt=1)


@register_encoder
class FaceMeshEncoder(VisualEncoder):
    """MediaPipe face-mesh geometry of lips, eyes and brows, pooled over frames (mean and std).

    Landmarks are taken in pixels, centred on the midpoint between the eyes, rotated so the eyes are
    level and divided by the distance between the eyes, so position, scale and roll do not count.
    """

    name = "facemesh"
    Params = FaceMeshParams
    params: FaceMeshParams

    @functools.cached_property
    def _mesh(self) -> face_mesh.FaceMesh:
        with (
            native_stderr_filtered()
        ):  # the graph starts on its first frame: a blank one, with its start-up lines hidden
            mesh = face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=1,
                refine_landmarks=False,
                min_detection_confidence=self.params.min_detection_confidence,
            )
            mesh.process(BLANK_FRAME)
        return mesh

    @property
    def dim(self) -> int:
        return 2 * 2 * len(EXPRESSION_LANDMARKS)

    def weight_files(self) -> dict[str, Path]:
        return {name: MEDIAPIPE_DIR / name for name in FACEMESH_MODEL_FILES}

    def library_versions(self) -> dict[str, str]:
        return {"mediapipe": mediapipe.__version__}

    def frame_geometry(self, frame: np.ndarray) -> np.ndarray | None:
        """Normalised (x, y) of the expression landmarks in one RGB frame, or None without a face."""
        found = _landmarks(self._mesh, np.ascontiguousarray(frame))
        if not found:
            return None
        height, width = frame.shape[:2]
        points = np.array([(mark.x * width, mark.y * height) for mark in found[0].landmark], dtype=np.float64)
        left, right = points[LEFT_EYE].mean(axis=0), points[RIGHT_EYE].mean(axis=0)
        axis = right - left
        scale = float(np.hypot(*axis))
        if scale < 1e-6:
            return None
        cos, sin = axis / scale
        rotation = np.array([[cos, sin], [-sin, cos]])
        return ((points[EXPRESSION_LANDMARKS] - (left + right) / 2) @ rotation.T / scale).ravel()

    def _encode_one(self, frames: np.ndarray) -> np.ndarray:
        geometry = [g for g in (self.frame_geometry(frame) for frame in frames) if g is not None]
        if not geometry:
            raise FeatureFailure(f"no face detected in any of {len(frames)} frames")
        stacked = np.stack(geometry)
        return np.concatenate([stacked.mean(axis=0), stacked.std(axis=0)]).astype(np.float32)

    def encode(self, inputs: Sequence[np.ndarray]) -> EncodedBatch:
        return per_item(inputs, self.dim, self._encode_one)


_FACE_SEEN = threading.Event()  # MediaPipe logs one more start-up line on the first face of a process


def _landmarks(mesh: face_mesh.FaceMesh, frame: np.ndarray) -> Any:
    """The mesh's face landmarks in ``frame``; until a face has been found, with MediaPipe's start-up lines hidden."""
    if _FACE_SEEN.is_set():
        return mesh.process(frame).multi_face_landmarks
    with native_stderr_filtered():
        found = mesh.process(frame).multi_face_landmarks
    if found:
        _FACE_SEEN.set()
    return found


class HFImageParams(EncoderParams):
    model: str = Field(..., description="Hugging Face image model folder or cached id (CLIP, ViT, ...).")
    crop: Literal["face", "frame"] = Field("face", description="'face': MTCNN face crops; 'frame': whole frames.")
    face_detector: Literal["mtcnn", "mediapipe"] = Field(
        "mtcnn", description="MTCNN (facenet-pytorch) or MediaPipe face detection."
    )
    face_margin: float = Field(0.2, ge=0, description="Margin added around each face box, as a fraction of its size.")
    min_face_probability: float = Field(0.9, gt=0, lt=1)


@register_encoder
class HFImageEncoder(PretrainedModelFolder, VisualEncoder):
    """Any Hugging Face image model on MTCNN face crops or whole frames, mean-pooled over frames."""

    name = "hf-image"
    Params = HFImageParams
    params: HFImageParams

    @functools.cached_property
    def _loaded(self) -> tuple[Any, Any]:
        return self.from_model_folder(transformers.AutoImageProcessor), self.model_on_device()

    @functools.cached_property
    def _mtcnn(self) -> Any:
        from facenet_pytorch import MTCNN  # imported on use: it pulls in torchvision's model zoo

        return MTCNN(keep_all=False, select_largest=True, device=self.runtime.device)

    @functools.cached_property
    def _mediapipe_detector(self) -> face_detection.FaceDetection:
        with native_stderr_filtered():
            detector = face_detection.FaceDetection(
                model_selection=0, min_detection_confidence=self.params.min_face_probability
            )
            detector.process(BLANK_FRAME)
        return detector

    def face_boxes(self, frames: np.ndarray) -> list[tuple[float, float, float, float] | None]:
        """Per frame, the pixel box (x0, y0, x1, y1) of its most confident face, or None."""
        if self.params.face_detector == "mtcnn":
            boxes, probabilities = self._mtcnn.detect(list(frames))
            return [
                None
                if frame_boxes is None or frame_probabilities[0] < self.params.min_face_probability
                else tuple(frame_boxes[0])
                for frame_boxes, frame_probabilities in zip(boxes, probabilities)
            ]
        found = []
        for frame in frames:
            detections = self._mediapipe_detector.process(np.ascontiguousarray(frame)).detections
            if not detections:
                found.append(None)
                continue
            box = max(detections, key=lambda d: d.score[0]).location_data.relative_bounding_box
            height, width = frame.shape[:2]
            found.append(
                (box.xmin * width, box.ymin * height, (box.xmin + box.width) * width, (box.ymin + box.height) * height)
            )
        return found

    @functools.cached_property
    def dim(self) -> int:
        processor, _ = self._loaded
        return int(self._image_features(processor([np.zeros((64, 64, 3), np.uint8)], return_tensors="pt")).shape[-1])

    def weight_files(self) -> dict[str, Path]:
        files = {f"model/{label}": path for label, path in model_files(self.model_dir).items()}
        if self.params.crop == "face" and self.params.face_detector == "mediapipe":
            files["mediapipe/face_detection_short_range.tflite"] = MEDIAPIPE_DIR / FACEMESH_MODEL_FILES[0]
        elif self.params.crop == "face":
            mtcnn_dir = Path(importlib.util.find_spec("facenet_pytorch").origin).parent / "data"
            files.update({f"mtcnn/{name}": mtcnn_dir / name for name in ("pnet.pt", "rnet.pt", "onet.pt")})
        return files

    def face_crops(self, frames: np.ndarray) -> list[np.ndarray]:
        """The most likely face of each frame (with margin); frames without a confident face are skipped."""
        crops = []
        for frame, box in zip(frames, self.face_boxes(frames)):
            if box is None:
                continue
            x0, y0, x1, y1 = box
            pad_x, pad_y = (x1 - x0) * self.params.face_margin / 2, (y1 - y0) * self.params.face_margin / 2
            height, width = frame.shape[:2]
            left, top = int(max(0, x0 - pad_x)), int(max(0, y0 - pad_y))
            right, bottom = int(min(width, x1 + pad_x)), int(min(height, y1 + pad_y))
            if right - left >= 2 and bottom - top >= 2:
                crops.append(frame[top:bottom, left:right])
        return crops

    @torch.inference_mode()
    def _image_features(self, pixels: Any) -> torch.Tensor:
        _, model = self._loaded
        pixels = pixels.to(self.runtime.device)
        with self.runtime.autocast():
            if hasattr(model, "get_image_features"):
                output = model.get_image_features(pixel_values=pixels["pixel_values"])
                return (output if isinstance(output, torch.Tensor) else output.pooler_output).float()
            output = model(pixel_values=pixels["pixel_values"])
        pooled = getattr(output, "pooler_output", None)
        return (pooled if pooled is not None else output.last_hidden_state.mean(dim=1)).float()

    def _encode_one(self, frames: np.ndarray) -> np.ndarray:
        images = self.face_crops(frames) if self.params.crop == "face" else list(frames)
        if not images:
            raise FeatureFailure(f"no face detected in any of {len(frames)} frames")
        processor, _ = self._loaded
        return self._image_features(processor(images, return_tensors="pt")).mean(dim=0).cpu().numpy()

    def encode(self, inputs: Sequence[np.ndarray]) -> EncodedBatch:
        return per_item(inputs, self.dim, self._encode_one)
