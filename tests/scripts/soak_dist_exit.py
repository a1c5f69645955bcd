"""Run the 2-process train and test commands back to back beside a competing CPU load and
count the runs that fail, abort at exit (SIGABRT: ``terminate called without an active
exception``) or print DDP's gradient-layout warning.

    python tests/scripts/soak_dist_exit.py --rounds 20 --work-dir /tmp/soak [--root OTHER_CHECKOUT]

Each round trains the small UperNet of the tests (configs/upernet/pale_t_ade20k.py, shrunk)
for 2 iterations with ``tools/dist_train.sh CONFIG 2``, then tests its checkpoint with
``tools/dist_test.sh CONFIG CKPT 2``. ``--root`` runs another checkout's tools (an older
commit, to count how often it aborted). Prints one line per run and a last line
``SUMMARY {...}``; exits 1 if any run failed. tests/test_distributed_exit.py runs 1 round.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

HERE = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))  # the checkout
sys.path.insert(0, HERE)
sys.path.insert(0, osp.join(HERE, 'tests'))

ABORT_MARKS = ('terminate called', 'Signals.SIGABRT', 'exitcode  : -6')
STRIDE_WARNING = 'Grad strides do not match bucket view strides'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--load', type=int, default=2, help='busy processes beside the runs')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--root', default=HERE, help='the checkout whose tools run')
    args = parser.parse_args(argv)

    from pale_mm.synthetic.ade import make_ade

    from det_common import free_port
    from seg_common import small_seg_options
    os.makedirs(args.work_dir, exist_ok=True)
    ade = make_ade(osp.join(args.work_dir, 'ade'), num_train=8, num_val=3, image_size=(64, 64),
                   seed=0, num_classes=5)
    config = osp.join(args.root, 'configs/upernet/pale_t_ade20k.py')
    options = small_seg_options(ade, 2, 6) + ['train_dataloader.batch_size=2']
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS='1')
    counts = dict(train=0, test=0, failures=0, aborts=0, stride_warnings=0)
    load = [subprocess.Popen([sys.executable, '-c', 'while True: pass'])
            for _ in range(args.load)]
    try:
        for i in range(args.rounds):
            work_dir = osp.join(args.work_dir, f'round{i}')
            commands = {
                'train': ['bash', osp.join(args.root, 'tools/dist_train.sh'), config, '2',
                          '--work-dir', work_dir, '--cfg-options'] + options,
                'test': ['bash', osp.join(args.root, 'tools/dist_test.sh'), config,
                         osp.join(work_dir, 'iter_2.pth'), '2', '--work-dir', work_dir,
                         '--cfg-options'] + options,
            }
            for name, cmd in commands.items():
                start = time.monotonic()
                proc = subprocess.run(cmd, cwd=args.work_dir, capture_output=True, text=True,
                                      env=dict(env, PORT=str(free_port())), timeout=600)
                log_path = osp.join(args.work_dir, f'{name}{i}.log')
                with open(log_path, 'w') as f:
                    f.write(proc.stdout + proc.stderr)
                log = proc.stdout + proc.stderr
                aborted = any(mark in log for mark in ABORT_MARKS)
                counts[name] += 1
                counts['failures'] += proc.returncode != 0
                counts['aborts'] += aborted
                counts['stride_warnings'] += STRIDE_WARNING in log
                print(f'round {i} {name}: exit {proc.returncode}'
                      f'{" ABORT" if aborted else ""}'
                      f'{" stride-warning" if STRIDE_WARNING in log else ""}'
                      f' ({time.monotonic() - start:.0f} s, {log_path})', flush=True)
    finally:
        for p in load:
            p.kill()
            p.wait()
    print('SUMMARY ' + json.dumps(counts), flush=True)
    return 1 if counts['failures'] or counts['aborts'] else 0


if __name__ == '__main__':
    sys.exit(main())
