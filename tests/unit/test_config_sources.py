"""Where a configuration comes from decides how its errors speak: distbp.fit's keywords by their names, the
command line's flags as flags; a TOML file is read whole or refused, never partly ignored."""

import argparse

import numpy as np
import pytest

import distbp
from distbp.comm.serial import SerialComm
from distbp.config import add_arguments, from_sources, load_toml
from distbp.errors import ConfigError


def test_python_errors_name_the_keyword_and_the_command_line_the_flag():
    X, y = np.zeros((8, 3)), np.arange(8) % 2
    with pytest.raises(ConfigError) as err:
        distbp.fit(distbp.MLP([3, 4, 2]), X, y, test_fraction=1.5, comm=SerialComm(), verbose=False)
    assert "test_fraction must be" in str(err.value) and "--test-fraction" not in str(err.value)
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    with pytest.raises(ConfigError, match="--test-fraction must be"):
        from_sources(parser.parse_args(["--test-fraction", "1.5"]))


def test_top_level_keys_beside_a_train_table_are_refused(tmp_path):
    mixed = tmp_path / "mixed.toml"
    mixed.write_text('epochs = 7\nlr = 0.5\n\n[train]\nbatch_size = 32\n')
    with pytest.raises(ConfigError, match=r"key\(s\) epochs, lr at the top level beside a \[train\] table"):
        load_toml(str(mixed))
    (tmp_path / "top.toml").write_text('epochs = 7\nbatch_size = 32\n')
    (tmp_path / "table.toml").write_text('[train]\nepochs = 7\nbatch_size = 32\n')
    assert load_toml(str(tmp_path / "top.toml")) == load_toml(str(tmp_path / "table.toml")) == {
        "epochs": 7, "batch_size": 32}
