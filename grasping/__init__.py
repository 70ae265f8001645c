"""The package the two scripts are command lines over, built on the lecture's pieces in common.py. Imports run one
way: scripts -> grasping -> common, and nothing in common imports grasping.

    flags          both scripts' flags and the presets
    training       the training loops (the lecture's, and N workers'), Trainer, train(), resume
    dqn            the lecture's learner, DQNAgent, and DQNPolicy
    pose_agent     the pose agent (--agent pose)
    kinematics     the arm's commanded pose, which follows from the actions
    evaluation     playing a policy greedily (or the random one) and its success rate
    runlog         a training run's log: TensorBoard, progress bar, best model, solve condition
    rollouts       Rollouts: episodes stepped on a pool's workers, actions in one batched call
    pool           EnvPool, the interface of the environment backends, and open_pool (no torch)
    process_pool   ProcessEnvPool: environments in worker processes on this machine (no torch)
    ray_pool       RayEnvPool: environments as Ray actors, an optional extra (no torch)
    environment    the pybullet environment, made quietly, and the workers' seeds (no torch)
    gymnasium_env  the environment behind the Gymnasium API, an optional extra (no torch)
    checkpoints    files: atomic writes, safe loading, a checkpoint's network configuration
    recording      GIFs and TensorBoard strips of played episodes
    stats          success rates with their 95% interval
    cli            argument types, one-line errors, the device flag, stop signals (no torch)
"""
