from uhved_tf.losses.losses import (DECAY_REDUCTIONS, DICE_FORMS, KL_FORMS, LossForms, LossWeights,
                                    all_subset_posteriors, cross_entropy_loss, kl_loss, kl_loss_original,
                                    reconstruction_loss, soft_dice_loss, subset_matrix, total_loss,
                                    weight_decay_loss)

__all__ = ["DECAY_REDUCTIONS", "DICE_FORMS", "KL_FORMS", "LossForms", "LossWeights", "all_subset_posteriors",
           "cross_entropy_loss", "kl_loss", "kl_loss_original", "reconstruction_loss", "soft_dice_loss",
           "subset_matrix", "total_loss", "weight_decay_loss"]
