"""Satipatthana study: adapter -> Samatha (Vitakka, Vicara, Sati) -> Vipassana -> task decoder, as a 4-stage
curriculum (``configs/satipatthana/*.yaml``), on make_circles, load_digits and ShapesWorld.

Where it departs from tamatebox/satipatthana-framework (on purpose):

* Stage 1 can add a void-energy term (``loss_weights.void_energy``; outlier exposure on the trajectory energy).
  Samatha is frozen in stage 2 and the v4.0 trust head sees only ``[log1p(velocity), log1p(avg_energy)]``
  (F11), so the energy itself has to separate data from void before stage 2 starts.
* Stage 2 trains ``vipassana.trust_head`` (v4.1: also the GRU and its two heads); the context encoder that
  makes ``v_ctx`` gets no gradient from the trust BCE, so it trains in stage 3 with the task decoder (the
  health guard rejects a trainable parameter that receives no gradient).
* Vicara's refiner starts with zero biases, and the CNN adapter standardises each image on its own: both stop
  every sample from landing on the same state at initialisation (the collapse guard would stop the run).
* The circles Samatha stage warms its learning rate up (``warmup_cosine``): Adam's first steps move Phi's
  output weights coherently and, without warm-up, some seeds pull every s* onto one state (collapse guard).
* Every void set (Gaussian, uniform, box) is filtered to lie farther than ``void_min_distance`` from the
  training points; the test reports trust / AUROC per void kind.
"""
