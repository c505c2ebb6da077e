"""`ppe eval`: the paper's evaluations from files or from a model (docs/evaluation.md).

    ppe eval coco --gt GT.json --results RES.json --out DIR          Table 1 (+ bbox, segm AP)
    ppe eval citypersons --anno anno_val.mat --detections DET.json --out DIR     Table 3 (MR^-2)
    ppe eval iou --gt GT.json --results RES.json --out DIR           Table 4 (instance / pixel IoU)
    ppe eval occlusion --checkpoint M --gt GT.json --images DIR --out DIR        Table 2
    ppe eval synthetic --gt SYN.json (--results RES.json | --checkpoint M --images DIR) --out DIR
    ppe eval model --checkpoint M --gt GT.json --images DIR --backend onnxruntime
                   [--compare-backend torch] [--anno anno_val.mat] --out DIR
    ppe eval citypersons-gt --anno anno_val.mat --root CITYSCAPES --out GT.json   (masks for iou / model)
    ppe eval tracking --gt SEQ/gt/gt.txt --results tracks_mot.txt [--fps 30] --out DIR   (MOTA, IDF1)

Each writes DIR/metrics.json, DIR/report.md and its curves as PNG files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from occluded_ppe_training.evaluation import citypersons as cp
from occluded_ppe_training.evaluation.model_eval import PARITY_PIXEL_TOLERANCE, PARITY_SCORE_TOLERANCE
from occluded_ppe_training.evaluation.report import (fmt, markdown_table, plot_miss_rate,
                                                     plot_precision_recall, write_json, write_markdown)

BACKENDS = ('torch', 'onnxruntime', 'tensorrt', 'auto')


def _load_json(path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{what} file {path} does not exist')
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f'{what} file {path} is not valid JSON: {error}') from error


def _category_map(text: str | None) -> dict[str, int] | None:
    """'pedestrian=1,rider=2' -> {'pedestrian': 1, 'rider': 2}."""
    if not text:
        return None
    mapping = {}
    for item in text.split(','):
        name, sep, value = item.partition('=')
        if not sep or not value.strip().lstrip('-').isdigit():
            raise ValueError(f'--category-map expects name=id pairs separated by commas, got {item!r}')
        mapping[name.strip()] = int(value)
    return mapping


# ----------------------------------------------------------------------------------------------------------
# sections shared by several subcommands

def coco_section(metrics: dict, out: Path, label: str = 'model') -> tuple[str, dict]:
    """Markdown for COCO metrics (+ PR curves PNG per iouType); returns (markdown, JSON)."""
    rows, parts = [], []
    for iou_type, m in metrics.items():
        named = m.named
        if iou_type == 'keypoints':
            rows.append(['keypoints (13 joints, OKS)', fmt(named['AP']), fmt(named['AP50']),
                         fmt(named['AP75']), 'n/a', fmt(named['APM']), fmt(named['APL'])])
        else:
            rows.append([iou_type, fmt(named['AP']), fmt(named['AP50']), fmt(named['AP75']),
                         fmt(named['APS']), fmt(named['APM']), fmt(named['APL'])])
        png = plot_precision_recall(out / f'pr_{iou_type}.png', {label: m.precision}, m.recall_thresholds,
                                    f'precision-recall, {iou_type}')
        parts.append(f'![{iou_type}]({png.name})')
    table = markdown_table(['evaluation', 'AP', 'AP50', 'AP75', 'APS', 'APM', 'APL'], rows)
    return table + '\n\n' + ' '.join(parts), {k: v.to_dict() for k, v in metrics.items()}


def citypersons_section(results: dict, out: Path) -> tuple[str, dict]:
    """Markdown for MR^-2 per setup (+ MR-FPPI PNG); returns (markdown, JSON)."""
    rows = [[name, f'{r.setup.height_range[0]:g}+', f'[{r.setup.visibility_range[0]:g}, '
             f'{"inf" if r.setup.visibility_range[1] > 1 else r.setup.visibility_range[1]}]',
             cp.format_percent(r.mr2), str(r.num_regular)] for name, r in results.items()]
    png = plot_miss_rate(out / 'mr_fppi.png', {n: (r.fppi, r.miss_rate, r.mr2) for n, r in results.items()})
    table = markdown_table(['setup', 'height', 'visibility', 'MR^-2 (%)', 'pedestrians'], rows)
    return table + f'\n\n![MR-FPPI]({png.name})', {n: r.to_dict() for n, r in results.items()}


def iou_section(results: dict) -> tuple[str, dict]:
    """Markdown for instance / pixel IoU per class; returns (markdown, JSON)."""
    rows = [[name, fmt(r.instance_iou), fmt(r.pixel_iou), str(r.num_instances), str(r.num_predictions)]
            for name, r in results.items()]
    table = markdown_table(['class', 'instance IoU (%)', 'pixel IoU (%)', 'instances', 'predictions'], rows)
    return table, {n: r.to_dict() for n, r in results.items()}


# ----------------------------------------------------------------------------------------------------------
# subcommands

def run_coco(args: argparse.Namespace) -> int:
    from occluded_ppe_training.evaluation.coco_eval import evaluate_coco

    gt = _load_json(args.gt, 'ground truth')
    results = _load_json(args.results, 'results')
    metrics = evaluate_coco(gt, results, args.iou_types)
    out = Path(args.out)
    markdown, data = coco_section(metrics, out)
    write_json(out / 'metrics.json', {'gt': str(args.gt), 'results': str(args.results), 'coco': data})
    summaries = '\n'.join(f'{k}:\n```\n{m.summary.strip()}\n```' for k, m in metrics.items())
    write_markdown(out / 'report.md', 'COCO evaluation',
                   [('Metrics', markdown), ('pycocotools summaries', summaries)])
    print(markdown.split('\n\n')[0])
    return 0


def run_citypersons(args: argparse.Namespace) -> int:
    images = cp.load_annotations(args.anno, args.pedestrian_category)
    detections = _load_json(args.detections, 'detections')
    results = cp.evaluate_citypersons(images, detections, args.setups, args.category_id)
    out = Path(args.out)
    markdown, data = citypersons_section(results, out)
    write_json(out / 'metrics.json', {'anno': str(args.anno), 'detections': str(args.detections),
                                      'citypersons': data})
    write_markdown(out / 'report.md', 'CityPersons MR^-2', [('Log-average miss rate', markdown)])
    print(markdown.split('\n\n')[0])
    return 0


def run_iou(args: argparse.Namespace) -> int:
    from occluded_ppe_training.evaluation.instance_iou import evaluate_instance_iou

    gt = _load_json(args.gt, 'ground truth')
    results = _load_json(args.results, 'results')
    per_class = evaluate_instance_iou(gt, results, args.score_threshold)
    markdown, data = iou_section(per_class)
    out = Path(args.out)
    write_json(out / 'metrics.json', {'gt': str(args.gt), 'results': str(args.results),
                                      'score_threshold': args.score_threshold, 'instance_iou': data})
    write_markdown(out / 'report.md', 'Instance segmentation IoU', [('IoU per class', markdown)])
    print(markdown)
    return 0


def run_occlusion(args: argparse.Namespace) -> int:
    from occluded_ppe_training.evaluation.coco_eval import evaluate_coco
    from occluded_ppe_training.evaluation.model_eval import load_predictor, predict_dataset
    from occluded_ppe_training.evaluation.occlusion import occlude_image, occlusion_ground_truth

    gt = _load_json(args.gt, 'ground truth')
    subset, per_image = occlusion_ground_truth(gt)
    if not per_image:
        raise ValueError(f'no instance in {args.gt} has all 13 joints labelled: nothing to occlude')
    predictor = load_predictor(args.checkpoint, args.backend, args.device, args.min_score)
    levels = sorted(set([0.0] + [float(v) for v in args.levels]))
    per_level, curves, rows = {}, {}, []
    for level in levels:
        def transform(image, info, level=level):
            return occlude_image(image, per_image[info['id']], level, args.seed) if level > 0 else image

        results, _ = predict_dataset(predictor, subset, args.images, transform)
        metrics = evaluate_coco(subset, results, ['keypoints'])['keypoints']
        per_level[f'{round(100 * level)}'] = metrics.to_dict()
        curves[f'{round(100 * level)} %'] = {'0.50:0.95': metrics.precision['0.50:0.95']}
        rows.append([f'{round(100 * level)} %', fmt(metrics.named['AP']), fmt(metrics.named['AP50']),
                     fmt(metrics.named['AP75'])])
    out = Path(args.out)
    png = plot_precision_recall(out / 'pr_occlusion_levels.png', curves,
                                per_level['0']['recall_thresholds'], 'keypoint PR per occlusion level')
    table = markdown_table(['occluded box area', 'AP', 'AP50', 'AP75'], rows)
    write_json(out / 'metrics.json', {'checkpoint': str(args.checkpoint), 'backend': args.backend,
                                      'seed': args.seed, 'num_instances': sum(map(len, per_image.values())),
                                      'num_images': len(per_image), 'levels': per_level})
    write_markdown(out / 'report.md', 'Keypoint AP under synthetic occlusion',
                   [('Keypoint AP (13 joints) per occlusion level', table + f'\n\n![PR]({png.name})')])
    print(table)
    return 0


def run_synthetic(args: argparse.Namespace) -> int:
    from occluded_ppe_training.evaluation.coco_eval import evaluate_coco
    from occluded_ppe_training.evaluation.occlusion import evaluate_pck

    gt = _load_json(args.gt, 'ground truth')
    if args.results:
        results = _load_json(args.results, 'results')
    else:
        if not (args.checkpoint and args.images):
            raise ValueError('ppe eval synthetic needs --results, or --checkpoint with --images')
        from occluded_ppe_training.evaluation.model_eval import load_predictor, predict_dataset

        predictor = load_predictor(args.checkpoint, args.backend, args.device, args.min_score)
        results, _ = predict_dataset(predictor, gt, args.images)
    pck = evaluate_pck(gt, results, args.alpha)
    metrics = evaluate_coco(gt, results, ['keypoints'])
    out = Path(args.out)
    coco_markdown, coco_data = coco_section(metrics, out)
    pck_table = markdown_table(['joints', f'PCK@{args.alpha:g} (%)', 'count'],
                               [['occluded', fmt(pck.occluded), str(pck.num_occluded)],
                                ['visible', fmt(pck.visible), str(pck.num_visible)],
                                ['all', fmt(pck.all), str(pck.num_occluded + pck.num_visible)]])
    write_json(out / 'metrics.json', {'gt': str(args.gt), 'pck': pck.to_dict(), 'coco': coco_data})
    write_markdown(out / 'report.md', 'Synthetic occluded pedestrians',
                   [('PCK (normalised by the ground-truth box larger side)', pck_table),
                    ('Keypoint AP (13 joints)', coco_markdown)])
    print(pck_table)
    return 0


def run_citypersons_gt(args: argparse.Namespace) -> int:
    from occluded_ppe_training.evaluation.citypersons_gt import citypersons_instance_ground_truth

    gt = citypersons_instance_ground_truth(args.anno, args.root, args.split)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(gt))
    instances = [a for a in gt['annotations'] if not a['iscrowd']]
    missing = sum(1 for a in gt['annotations'] if a.get('mask_missing'))
    print(f'wrote {out}: {len(gt["images"])} images, {len(instances)} instances with masks, '
          f'{len(gt["annotations"]) - len(instances)} ignore regions '
          f'({missing} pedestrians/riders without a mask)')
    return 0


def run_model(args: argparse.Namespace) -> int:
    from occluded_ppe_training.evaluation.coco_eval import evaluate_coco
    from occluded_ppe_training.evaluation.instance_iou import evaluate_instance_iou
    from occluded_ppe_training.evaluation.model_eval import (compare_predictions, load_predictor,
                                                             parity_failures, predict_dataset)

    gt = _load_json(args.gt, 'ground truth')
    category_ids = _category_map(args.category_map)
    out = Path(args.out)
    backends = [args.backend] + ([args.compare_backend] if args.compare_backend else [])
    sections, data, runs = [], {'checkpoint': str(args.checkpoint), 'gt': str(args.gt)}, {}
    names = {im['id']: Path(im.get('file_name') or im.get('im_name', '')).name for im in gt['images']}
    anno_images = None
    if args.anno:
        # only the evaluated images count in FPPI
        anno_images = [im for im in cp.load_annotations(args.anno) if im.im_name in set(names.values())]
        if not anno_images:
            raise ValueError(f'none of the {len(names)} images of {args.gt} is named in {args.anno}')
    for backend in backends:
        predictor = load_predictor(args.checkpoint, backend, args.device, args.min_score)
        results, pedestrians = predict_dataset(predictor, gt, args.images, category_ids=category_ids)
        runs[backend] = pedestrians
        out.mkdir(parents=True, exist_ok=True)
        (out / f'results_{backend}.json').write_text(json.dumps(results))
        backend_data = {}
        metrics = evaluate_coco(gt, results)
        markdown, backend_data['coco'] = coco_section(metrics, out / backend, backend)
        sections.append((f'{backend}: COCO metrics', markdown.replace('](', f']({backend}/')))
        if 'segm' in metrics:
            markdown, backend_data['instance_iou'] = iou_section(
                evaluate_instance_iou(gt, results, args.score_threshold))
            sections.append((f'{backend}: instance IoU', markdown))
        if anno_images is not None:
            # MR^-2 is about pedestrians: with a category map, only the pedestrian class's detections
            pedestrian_id = (category_ids or {}).get('pedestrian')
            detections = [{'im_name': names[r['image_id']], 'bbox': r['bbox'], 'score': r['score']}
                          for r in results if pedestrian_id is None or r['category_id'] == pedestrian_id]
            markdown, backend_data['citypersons'] = citypersons_section(
                cp.evaluate_citypersons(anno_images, detections), out / backend)
            sections.append((f'{backend}: CityPersons MR^-2', markdown.replace('](', f']({backend}/')))
        data[backend] = backend_data
    failed_gate = ''
    if args.compare_backend:
        sizes = {im['id']: (int(im['height']), int(im['width'])) for im in gt['images']}
        parity = compare_predictions(runs[args.compare_backend], runs[args.backend], sizes)
        failures = parity_failures(parity, args.min_score, args.pixel_tolerance, args.score_tolerance)
        data['parity'] = {'reference': args.compare_backend, 'candidate': args.backend, 'ok': not failures,
                          'failures': failures, 'pixel_tolerance': args.pixel_tolerance,
                          'score_tolerance': args.score_tolerance, **parity.to_dict()}
        rows = [[key, str(value if not isinstance(value, float) else f'{value:.6g}')]
                for key, value in parity.to_dict().items() if key != 'per_image']
        rows.append(['gate', 'passed' if not failures else 'FAILED: ' + '; '.join(failures)])
        sections.append((f'parity: {args.backend} vs {args.compare_backend}',
                         markdown_table(['quantity', 'value'], rows)))
        if failures:
            failed_gate = (f'ppe eval model: PARITY FAILED: {args.backend} vs {args.compare_backend}: '
                           + '; '.join(failures))
    write_json(out / 'metrics.json', data)
    write_markdown(out / 'report.md', f'Model evaluation: {Path(args.checkpoint).name}', sections)
    print('\n\n'.join(f'{h}\n{b}' for h, b in sections))
    if failed_gate:
        print(failed_gate, file=sys.stderr)
        return 1
    return 0


def run_tracking(args: argparse.Namespace) -> int:
    """MOTA / IDF1 (motmetrics) and identity switches per full occlusion, one sequence."""
    from occluded_ppe_training.evaluation.tracking import evaluate_sequences, load_pair, read_frame_rate

    gt_path, results_path = Path(args.gt), Path(args.results)
    fps = args.fps or read_frame_rate(gt_path.parent.parent)
    gt, results = load_pair(gt_path, results_path)
    scores = evaluate_sequences([(gt_path.parent.parent.name or 'sequence', gt, results, fps)],
                                min_visibility=args.min_visibility, iou_threshold=args.iou_threshold)
    data = scores.to_dict()
    out = Path(args.out)
    write_json(out / 'metrics.json', data)
    m, short = data['metrics'], data['occlusions_up_to_1s']
    table = markdown_table(['MOTA', 'MOTP', 'IDF1', 'ID switches', 'FP', 'misses', 'HOTA'],
                           [[fmt(m['mota']), fmt(m['motp'], 1.0, 3), fmt(m['idf1']),
                             str(int(m['num_switches'])), str(int(m['num_false_positives'])),
                             str(int(m['num_misses'])), 'n/a (no TrackEval)']])
    events = (f'{short["events"]} full occlusions of up to 1 s ({short["resolved"]} matched on both sides): '
              f'{short["switches"]} identity switches across them')
    write_markdown(out / 'report.md', f'Tracking: {results_path}', [('CLEAR MOT and identity metrics', table),
                                                                   ('Occlusions', events)])
    print(f'MOTA {m["mota"]:.3f}  IDF1 {m["idf1"]:.3f}  ID switches {int(m["num_switches"])}; {events}')
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands of `ppe eval` (module docstring)."""
    sub = parser.add_subparsers(dest='eval_command', required=True, metavar='evaluation')

    p = sub.add_parser('coco', help='COCO keypoint AP over 13 joints (+ bbox, segm AP) from a results JSON')
    p.add_argument('--gt', required=True, help='COCO ground-truth JSON (17- or 13-joint keypoints)')
    p.add_argument('--results', required=True, help='COCO results JSON (as `ppe infer` writes)')
    p.add_argument('--iou-types', nargs='+', choices=('keypoints', 'bbox', 'segm'),
                   help='evaluations to run (default: every one the files support)')
    p.add_argument('--out', required=True, help='output folder')
    p.set_defaults(handler=run_coco)

    p = sub.add_parser('citypersons', help='CityPersons MR^-2 (official protocol) from detections')
    p.add_argument('--anno', required=True, help='anno_val.mat, or its COCO-style JSON conversion')
    p.add_argument('--detections', required=True,
                   help='JSON list of {image_id (1-based, .mat order) or im_name, bbox [x,y,w,h], score}')
    p.add_argument('--setups', nargs='+', choices=list(cp.SETUPS), help='default: all four')
    p.add_argument('--category-id', type=int, help='evaluate only detections of this category_id')
    p.add_argument('--pedestrian-category', type=int, default=1,
                   help='COCO-style JSON only: the category id of regular pedestrians')
    p.add_argument('--out', required=True, help='output folder')
    p.set_defaults(handler=run_citypersons)

    p = sub.add_parser('iou', help='instance and pixel IoU per class from a results JSON')
    p.add_argument('--gt', required=True, help='COCO ground-truth JSON with segmentations')
    p.add_argument('--results', required=True, help='COCO results JSON with RLE segmentations')
    p.add_argument('--score-threshold', type=float, default=0.5, help='predictions below it are dropped')
    p.add_argument('--out', required=True, help='output folder')
    p.set_defaults(handler=run_iou)

    def model_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument('--checkpoint', required=required, help='checkpoint (.pt) or exported model (.onnx)')
        p.add_argument('--images', required=required, help='folder of the ground truth images')
        p.add_argument('--backend', default='torch', choices=BACKENDS, help='inference backend')
        p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
        p.add_argument('--min-score', type=float, default=0.05,
                       help='predictor score threshold: low, so AP sees the whole precision-recall curve')

    p = sub.add_parser('occlusion', help='keypoint AP with 20-70 %% of each fully labelled box occluded')
    p.add_argument('--gt', required=True, help='COCO person-keypoints ground-truth JSON')
    model_arguments(p)
    p.add_argument('--levels', nargs='+', type=float, default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                   help='occluded fractions of each box (0 = no occlusion is always added)')
    p.add_argument('--seed', type=int, default=0, help='seed of the occlusion rectangles')
    p.add_argument('--out', required=True, help='output folder')
    p.set_defaults(handler=run_occlusion)

    p = sub.add_parser('synthetic',
                       help='PCK (occluded / visible joints) and keypoint AP on the synthetic set')
    p.add_argument('--gt', required=True, help='synthetic COCO JSON with keypoints_occluded per annotation')
    p.add_argument('--results', help='COCO results JSON (else run --checkpoint on --images)')
    model_arguments(p, required=False)
    p.add_argument('--alpha', type=float, default=0.1, help='PCK threshold / larger side of the GT box')
    p.add_argument('--out', required=True, help='output folder')
    p.set_defaults(handler=run_synthetic)

    p = sub.add_parser('citypersons-gt',
                       help='anno_val.mat + Cityscapes gtFine masks -> COCO instance JSON (for iou / model)')
    p.add_argument('--anno', required=True, help='anno_val.mat')
    p.add_argument('--root', required=True, help='Cityscapes root (leftImg8bit/, gtFine/)')
    p.add_argument('--split', default='val', help="'val' or 'train'")
    p.add_argument('--out', required=True, help='JSON file to write')
    p.set_defaults(handler=run_citypersons_gt)

    p = sub.add_parser('model', help='run a model (any backend) and compute every applicable metric')
    p.add_argument('--gt', required=True, help='COCO ground-truth JSON of the images')
    model_arguments(p)
    p.add_argument('--compare-backend', choices=BACKENDS,
                   help='also run this backend as the reference: a parity gate, exit status 1 with one line '
                   'naming what differs beyond the tolerances (e.g. torch)')
    p.add_argument('--pixel-tolerance', type=float, default=PARITY_PIXEL_TOLERANCE,
                   help='parity gate: largest box-corner and joint-position difference, input-image pixels '
                   '(default %(default)s, for fp32 backends)')
    p.add_argument('--score-tolerance', type=float, default=PARITY_SCORE_TOLERANCE,
                   help='parity gate: largest detection- and joint-score difference (default %(default)s)')
    p.add_argument('--category-map', help="class_name=category_id pairs, e.g. 'pedestrian=1,rider=2' "
                   '(default: every detection is category 1)')
    p.add_argument('--anno',
                   help='CityPersons anno_val.mat: also compute MR^-2 (images matched by file name)')
    p.add_argument('--score-threshold', type=float, default=0.5, help='instance IoU: minimum score')
    p.add_argument('--out', required=True, help='output folder')
    p.set_defaults(handler=run_model)
    _add_tracking_arguments(sub)


def _add_tracking_arguments(sub) -> None:
    p = sub.add_parser('tracking', help='MOTA, IDF1 (motmetrics) and identity switches per occlusion')
    p.add_argument('--gt', required=True, help='MOTChallenge gt.txt (e.g. from ppe synth --video)')
    p.add_argument('--results', required=True, help='MOTChallenge results (ppe infer --video tracks_mot.txt)')
    p.add_argument('--fps', type=float, default=0.0, help="frame rate (default: the sequence's seqinfo.ini)")
    p.add_argument('--min-visibility', type=float, default=0.05,
                   help='ground-truth boxes less visible than this are fully hidden: not scored')
    p.add_argument('--iou-threshold', type=float, default=0.5, help='minimum IoU of a match')
    p.add_argument('--out', required=True, help='output folder')
    p.set_defaults(handler=run_tracking)


def run(args: argparse.Namespace) -> int:
    """Run the chosen evaluation; returns the exit code (2 with a one-line message for bad input)."""
    try:
        return int(args.handler(args) or 0)
    except (FileNotFoundError, ValueError) as error:
        print(f'ppe eval {args.eval_command}: error: {error}', file=sys.stderr)
        return 2
