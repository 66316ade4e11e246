"""Where to measure next: a jointly chosen batch of k new points from data in hand.

One module per layer: table (CSV/DataFrame in, checks, normalisation, the suggestions
table out), config (SuggestConfig), kernel (kernel name and options), hyper (the GP
hyperparameter posterior), criteria (what a batch is worth, one table of criteria),
search (gradient search for the batch), suggester (the whole request; ask/tell).
"""

from placement.suggest.config import SUGGEST_SAMPLERS, SuggestConfig
from placement.suggest.criteria import (CRITERIA, CritData, batch_mixture, crit_data, fantasy_normals,
                                        make_criterion, mixture_predictive)
from placement.suggest.hyper import hyper_draws, hyper_logdensity, hyper_mode, suggest_model
from placement.suggest.kernel import Kernel
from placement.suggest.search import batch_search, grid_points
from placement.suggest.suggester import AskTellState, Suggester, suggest, suggest_arrays
from placement.suggest.table import check_bounds, check_points, frame_to_arrays, prepare, read_table, \
    suggestions_frame

__all__ = ["CRITERIA", "SUGGEST_SAMPLERS", "AskTellState", "CritData", "Kernel", "SuggestConfig", "Suggester",
           "batch_mixture", "check_bounds", "check_points", "crit_data", "fantasy_normals", "frame_to_arrays",
           "batch_search", "grid_points", "hyper_draws", "hyper_logdensity", "hyper_mode", "make_criterion", "mixture_predictive",
           "prepare", "read_table", "suggest", "suggest_arrays", "suggest_model", "suggestions_frame"]
