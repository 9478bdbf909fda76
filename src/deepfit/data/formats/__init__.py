"""Label formats on disk, parsed into plain records that the detection and segmentation tasks assemble.

Nothing here knows a task: the readers give boxes, classes and masks per image (`objects`), or decode
mask files into class values (`masks`, `mask_classes`), and the tasks build their data sets from those.

- `common`: what every reader needs: folders matched case-insensitively, images listed by relative folder
  and stem (how images pair with their labels), splits from folder names, the dataset YAML and its class
  names, and the bookkeeping of bad labels (a warning each up to a limit, an error past a share).
- `objects`: one image's objects as a reader found them, the checks that drop a bad box or polygon, and
  the layouts of object labels that error messages show.
- `coco`, `yolo`, `voc`: those formats' object labels; `coco` also turns a COCO mask into pixels.
- `via`, `labelme`, `cvat`: the files of the annotation tools people label with (VGG Image Annotator JSON,
  LabelMe JSON, CVAT XML) as object labels; `shapes`, what they share: their shapes (rectangles, polygons,
  circles, ellipses, brush masks) as boxes and masks, images found by the names the tools stored, classes
  named once all files are read.
- `layout`: which object-label format a file or folder holds; `sniff`, which tool wrote a JSON or XML file,
  from the keys at its start (COCO, VIA and LabelMe all write .json).
- `masks`: the decoding of semantic masks (index, palette or RGB) into class values, with `IGNORE_INDEX`,
  the class index of ignored pixels.
- `instance_masks`: instance-mask PNGs (one value per object) as object labels, and their classes.
- `mask_classes`: which mask values are which classes: saved class maps, colour files, and the
  inference of the encoding and the classes from the masks found.
- `mask_folders`: masks as files, semantic or instance: image and mask folders (side by side per split
  too), the YAML naming them, how images and masks pair up (by name, or by a mask-name pattern), and the
  record of the files skipped.
"""
