"""Test outputs written atomically: ``--out`` files, COCO result files and mmseg's label-map
folder are written under temporary names and replace earlier ones only once complete, so a
failed or killed test leaves the earlier outputs as they were."""
import os
import os.path as osp


def dump_metric(scope: str, out_file: str):
    """The metric that writes ``--out``: into a temporary file, renamed over ``out_file``
    only once complete (a failed or killed test leaves an earlier file as it was)."""
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults as base
    else:
        from mmengine.evaluator import DumpResults as base

    from ..fileio import written_atomically

    class AtomicDump(base):
        def compute_metrics(self, results):
            final = self.out_file_path
            with written_atomically(final, suffix='.pkl') as tmp:  # the suffix picks pickle
                self.out_file_path = tmp
                try:
                    return super().compute_metrics(results)
                finally:
                    self.out_file_path = final

    return AtomicDump(out_file_path=out_file)


def atomic_coco_results(runner) -> None:
    """mmdet's CocoMetric writes its result files (``outfile_prefix``.bbox.json, .segm.json)
    in place; here into temporary names, renamed once each file is complete."""
    from ..fileio import tmp_path_beside
    for metric in getattr(runner.test_evaluator, 'metrics', []):
        if not hasattr(metric, 'results2json') or getattr(metric, '_pale_atomic', False):
            continue
        original = metric.results2json

        def results2json(results, outfile_prefix, _original=original):
            os.makedirs(osp.dirname(osp.abspath(outfile_prefix)), exist_ok=True)
            tmp_prefix = tmp_path_beside(osp.abspath(outfile_prefix))
            files = _original(results, tmp_prefix)
            for key, path in list(files.items()):
                final = outfile_prefix + path[len(tmp_prefix):]
                if osp.exists(path):  # one file may stand for two keys (bbox, proposal)
                    os.replace(path, final)
                files[key] = final
            return files

        metric.results2json = results2json
        metric._pale_atomic = True


def seg_output_dir_swap(runner, out_dir: str):
    """mmseg writes ``--out`` label maps one by one while testing; they go into
    ``out_dir.partial-<timestamp>`` and replace ``out_dir`` only after the whole test set
    (an earlier ``out_dir`` survives a failed test). Returns the function that swaps."""
    import shutil

    from mmengine.dist import barrier, is_main_process
    partial = f'{out_dir.rstrip("/")}.partial-{runner.timestamp}'
    for metric in runner.test_evaluator.metrics:
        if hasattr(metric, 'output_dir'):
            metric.output_dir = partial
    os.makedirs(partial, exist_ok=True)

    def swap():
        barrier()
        if not is_main_process():
            return
        old = None
        if osp.exists(out_dir):
            old = f'{out_dir.rstrip("/")}.old-{runner.timestamp}'
            os.replace(out_dir, old)
        os.replace(partial, out_dir)
        if old:
            shutil.rmtree(old)

    def discard():
        if is_main_process() and osp.isdir(partial):
            shutil.rmtree(partial)

    swap.discard = discard
    return swap
