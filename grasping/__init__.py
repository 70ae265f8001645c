"""What the two scripts need besides the lecture's pieces in common.py, one job per module.

    cli          the command line: one-line errors, argument types, stop signals (no torch)
    environment  the pybullet environment and how a camera image becomes a frame (no torch)
    workers      environments in worker processes, EnvPool (no torch: a worker stays small)
    rollouts     Rollouts: episodes stepped on a pool's workers, actions in one batched call
    checkpoints  files: atomic writes, safe loading, a checkpoint's network configuration
    evaluation   playing a policy greedily (or the random one) and its success rate
    recording    GIFs and TensorBoard strips of played episodes
    runlog       a training run's log: TensorBoard, progress bar, best model, solve condition
    stats        success rates with their 95% interval
    kinematics   the arm's commanded pose, which follows from the actions
    pose_agent   the pose agent (--agent pose)
"""
