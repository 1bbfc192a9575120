from uhved_tf.losses.losses import (LossWeights, cross_entropy_loss, kl_loss, reconstruction_loss,
                                    soft_dice_loss, total_loss)

__all__ = ["LossWeights", "cross_entropy_loss", "kl_loss", "reconstruction_loss", "soft_dice_loss",
           "total_loss"]
