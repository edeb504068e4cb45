"""The packaged GPT example's new parts: where it runs, reading batches from a file."""

from __future__ import annotations

import os

import pytest

from sentinel.examples.gpt import DIRECT_ALIGN, DirectReader, Placement, placement, write_data


def test_placement_from_torchrun_then_srun_then_alone():
    assert placement({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                      "SLURMD_NODENAME": "node2"}) == Placement(3, 8, 1, "node2")
    srun = {"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0",
            "SLURMD_NODENAME": "node4", "MASTER_ADDR": "n1", "MASTER_PORT": "29500"}
    assert placement(srun) == Placement(2, 4, 0, "node4")
    # A one-task batch job with no rendezvous: a process alone, whatever Slurm says.
    alone = {k: v for k, v in srun.items() if not k.startswith("MASTER")}
    assert placement(alone) == Placement(0, 1, 0, "node4")


def test_direct_reads_return_the_files_bytes_at_any_offset(tmp_path):
    path = tmp_path / "corpus.bin"
    n = write_data(path, "tiny")
    data = path.read_bytes()
    assert n == len(data) == 4 << 20
    try:
        r = DirectReader(path)
    except SystemExit as e:  # a filesystem without O_DIRECT (tmpfs): said so, by name
        assert "O_DIRECT" in str(e)
        pytest.skip(f"{tmp_path} does not support O_DIRECT")
    try:
        for off, size in ((0, 65), (DIRECT_ALIGN - 10, 65), (n - 65, 65), (12345, 3 * 4096)):
            assert r.read(off, size) == data[off:off + size]
        with pytest.raises(OSError, match="short read"):
            r.read(n - 10, 65)
    finally:
        r.close()


def test_a_data_file_that_cannot_be_read_directly_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"--data-file .*missing: cannot open it with O_DIRECT"):
        DirectReader(tmp_path / "missing")
    assert not os.path.exists(tmp_path / "missing")
