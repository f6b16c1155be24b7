"""95% intervals for the report scripts (scripts/*_report.py), clipped to what a share can be:
a t-interval over trained models (seeds or rotations, each one sample), and a Wilson interval
over one model's test items."""
import math

# Two-sided 95% t quantiles by degrees of freedom (1.96 beyond).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_t_interval(values):
    """The mean of `values` (shares) and its 95% t-interval, or None for a single value."""
    k = len(values)
    mean = sum(values) / k
    if k < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = T95.get(k - 1, 1.96) * sd / math.sqrt(k)
    return mean, (max(0.0, mean - half), min(1.0, mean + half))


def wilson(correct, n, z=1.96):
    """The 95% Wilson interval of `correct` right out of `n`."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
