"""Key layouts of a few public Open X-Embodiment RLDS datasets (names from their published ``features.json``).

Keys are relative to ``steps/``. ``actions`` / ``state`` list keys concatenated in order (a dict action like
Fractal's becomes one flat vector). ``fps`` is the control rate the dataset's paper reports; RLDS itself
stores no rate.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # rail-berkeley BridgeData V2 as RLDS (bridge_dataset / bridge_orig): 4 cameras, 7-D delta EEF actions
    "bridge": {"cameras": {"image_0": "observation/image_0", "image_1": "observation/image_1",
                           "image_2": "observation/image_2", "image_3": "observation/image_3"},
               "actions": ["action"], "state": ["observation/state"], "language": "language_instruction",
               "fps": 5.0},
    # Google RT-1 (fractal20220817_data): one camera, dict actions, language per step in the observation
    "fractal": {"cameras": {"image": "observation/image"},
                "actions": ["action/world_vector", "action/rotation_delta", "action/gripper_closedness_action"],
                "state": ["observation/base_pose_tool_reached"],
                "language": "observation/natural_language_instruction", "fps": 3.0},
    # DROID (droid 1.0.x): two exterior cameras and a wrist camera, joint + cartesian state
    "droid": {"cameras": {"exterior_1": "observation/exterior_image_1_left",
                          "exterior_2": "observation/exterior_image_2_left",
                          "wrist": "observation/wrist_image_left"},
              "actions": ["action"], "state": ["observation/cartesian_position", "observation/gripper_position"],
              "joints": ["observation/joint_position"], "language": "language_instruction", "fps": 15.0},
    # OpenVLA's LIBERO RLDS (libero_*_no_noops): agent view + wrist, 8-D state, 7-D actions
    "libero": {"cameras": {"image": "observation/image", "wrist_image": "observation/wrist_image"},
               "actions": ["action"], "state": ["observation/state"], "joints": ["observation/joint_state"],
               "language": "language_instruction", "fps": 10.0},
}

LANGUAGE_KEYS = ("language_instruction", "observation/natural_language_instruction",
                 "observation/language_instruction", "language_instruction_2")
DEFAULT_FPS = 10.0
